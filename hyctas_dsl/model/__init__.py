"""Facts about a network computed from its AST alone: the computation DAG (graph) and the
analytic cost model (params, MACs, training memory). Never imports torch."""
