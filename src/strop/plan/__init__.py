"""Plan before you spend: memory, fit, time, cost, method advice, licenses, environment.

Nothing here allocates a model: estimates come from config.json and the
tokenizer; `--measure` trains a few steps in a child process.
"""
