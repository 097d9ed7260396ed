"""Benchmarks whose logic the tools call: the Stage-1 cost against
fine-tuning (:mod:`.speed`, ``make bench-speed``) and the size and speed of
exported models (:mod:`.export`, ``make bench-export``)."""
