"""Research code the benchmarks use and the installed packages do not.

Candidate ciphers that did not become modes (the per-dataset tile scramble), the statistics
attack that reads such a scramble back, and the recognizability classifier that scores
reconstructions by class. The benchmarks and their tests import them from here
(`benchmarks/` on sys.path); nothing under encrypt/, train/ or audit/ does.
"""
