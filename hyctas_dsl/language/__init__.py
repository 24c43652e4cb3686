"""The language: AST, parser, validator (the paper's four constraints and every structural
rule), printer, errors with locations, the op table, the shipped spaces, and the json-shaped
API (``hyctas_dsl.load`` and friends re-export it). Never imports torch."""
