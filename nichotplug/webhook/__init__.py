"""The admission webhooks: AdmissionReview in, the rules' decision out, over TLS.

- ``review``: the wire format as typed dictionaries.
- ``codec``: decode and check a review body (unusable calls become HTTP 4xx), encode answers.
- ``engine``: request -> ``rules.admission`` -> AdmissionResponse; what happens when a rule raises.
- ``http``: the admission handler: the aiohttp routes of both webhooks, their HTTP-level checks,
  metrics and the per-request log line.
- ``fastdecode``: the validating webhook's quickest route for a plain VM CREATE (msgspec).
- ``tls``: the serving certificate, reloaded from its files without a restart.
- ``metrics``: Prometheus metrics of the webhooks.
- ``registration``: which resources and operations the webhooks are registered for.

``nichotplug.serving`` owns the port they are served on (TLS front door, probes, drain, the
``/metrics`` app); ``nichotplug.service`` assembles everything into ``nichotplug serve``.
"""
