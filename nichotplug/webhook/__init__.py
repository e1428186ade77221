"""The admission webhooks: AdmissionReview in, the rules' decision out, over TLS.

- ``review``: the wire format as typed dictionaries.
- ``codec``: decode and check a review body (unusable calls become HTTP 4xx), encode answers.
- ``engine``: request -> ``rules.admission`` -> AdmissionResponse; what happens when a rule raises.
- ``http``: the aiohttp routes, probes, metrics and the per-request log line.
- ``tls``: the serving certificate, reloaded from its files without a restart.
- ``metrics``: Prometheus metrics and the plain-HTTP ``/metrics`` app.
- ``registration``: which resources and operations the webhooks are registered for.

``nichotplug.service`` assembles them into ``nichotplug serve``.
"""
