"""Locust as a second load engine for servebench.

- :mod:`bench.load.locust.settings`: the locustfile's custom arguments and the prompt file (light).
- :mod:`bench.load.locust.stream`: one streaming request over geventhttpclient, read line by line.
- :mod:`bench.load.locust.user`: the locust ``User``, its metric events and its request bound.
- :mod:`bench.load.locust.engine`: ``bench load --engine locust`` (locust in subprocesses).

Only ``stream`` and ``user`` import locust or gevent; the main ``bench`` process never does, because
locust monkey-patches the standard library on import.
"""
