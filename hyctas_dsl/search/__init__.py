"""The search over the language's AST: the genome (encode, decode, sample, mutate, cross
over) and the NSGA-II driver with Algorithm 1's accuracy filter. Never imports torch; the
torch side of a search (scoring candidates on the supernet) is ``hyctas_dsl.jobs.search``."""
