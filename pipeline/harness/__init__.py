"""What only benchmarks and tests use: a stand-in accelerator with a cost model (``standin``), a hook that
kills a process at a named step of the commit protocol (``crash``, inert unless its variable is set), and the
measurements of a benchmark run (``benchmark``, ``utilisation``, ``memory``).
"""
