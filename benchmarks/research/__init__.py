"""Research code the benchmarks use and the installed packages do not.

Candidate ciphers that did not become modes (the per-dataset tile scramble; the per-tile
value transforms of the third round, `tile_stats`), the statistics attack that reads such a
scramble back, the recognizability classifier that scores reconstructions by class, and the
two-release helpers of the cross-release check (`cross_release`). The benchmarks and their
tests import them from here (`benchmarks/` on sys.path); nothing under encrypt/, train/ or
audit/ does.
"""
