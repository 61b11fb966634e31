"""The tagspace streaming service (Kafka in, Hogwild online training, Redis state, HTTP API).

Built on the ``tagspace`` library, which never imports this package. Its parts arrive with the
daemon issue; until then the library and its CLI (``tagspace train/evaluate/suggest/compare``)
are the whole product.
"""
