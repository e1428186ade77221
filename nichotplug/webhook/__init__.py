"""The admission webhooks: AdmissionReview in, the rules' decision out, over TLS.

- ``review``: the wire format as typed dictionaries.
- ``codec``: decode and check a review body (unusable calls become HTTP 4xx), encode answers.
- ``engine``: request -> ``rules.admission`` -> AdmissionResponse; what happens when a rule raises.
- ``http``: the aiohttp routes, probes, metrics, the per-request log line, and the front door that
  answers the admission paths before the app's router.
- ``fastdecode``: the validating webhook's quickest route for a plain VM CREATE (msgspec).
- ``tls``: the serving certificate, reloaded from its files without a restart.
- ``metrics``: Prometheus metrics and the plain-HTTP ``/metrics`` app.
- ``registration``: which resources and operations the webhooks are registered for.

``nichotplug.service`` assembles them into ``nichotplug serve``.
"""
