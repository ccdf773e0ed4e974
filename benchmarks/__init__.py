"""The benchmark jobs behind ``scripts/benchmark.py``, one module each, beside the results they write.

Each job module has ``run(args, device, env)``. A comparison is a ratio with the absolute numbers beside it; the
implementations alternate A B A B in one process and the median is reported, because the machine may be shared.
The jobs share ``timing`` (alternated measures, the one train-step timer), ``usual_way`` (the plain-PyTorch reference
loop both usual-way comparisons train with), ``checkpoints`` (random ViTs saved like Hub checkpoints) and
``results`` (paths, the environment line, the results files). This package imports hfvision; hfvision never
imports it.
"""
