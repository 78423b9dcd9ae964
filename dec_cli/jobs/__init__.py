"""One library function per command, which the command line calls: the warp and unwarp tree jobs,
retrofit, evaluate (with the bundled demo), finetune and the digits benchmark.

May import: any area (`training`, `evaluation`, `trees`, `backbones`, `canon`, `warps`, `core`); never `dec_cli.cli`.
"""
