"""The back end: lowers validated architectures to torch.nn modules (``hyctas_dsl.compiler``)."""
