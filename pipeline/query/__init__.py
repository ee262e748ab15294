"""Reading what runs wrote: the results of an output prefix exactly as its ledger names them (``results``)
and full-text search over their answers and captions (``search``, ranked by ``bm25``).
"""
