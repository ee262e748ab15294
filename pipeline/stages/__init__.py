"""The stages a video goes through, in order: list the sources (``sources``, ``split``), read and decode them
into segments (``storage``, ``s3_keys``, ``video``, ``readers``, ``decode``, ``shots``), answer each segment with
the model (``predictor``), in rows of one declared contract (``schema``). Plain functions and callable classes
that run without Ray; ``pipeline/build.py`` wires them into the one Ray Data chain.
"""
