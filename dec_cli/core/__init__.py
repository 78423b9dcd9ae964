"""Basics every area uses: one-line errors, atomic files, safe display of names, limits, option files,
the model record (`modelinfo`), signals, memory estimates and torchrun process groups.

May import: nothing else in dec_cli (only `dec_cli.version`).
"""
