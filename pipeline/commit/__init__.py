"""The exactly-once protocol: which results are committed and by whom. The ledger and its commit markers
(``ledger``, ``ledger_index``), the files it writes atomically (``ledger_files``), the one driver per output
(``lease``, ``lease_store``) and the checkpoint identity that goes into every ledger key (``revision``). A
video is done when its marker says so, never because a part file exists.
"""
