"""The layer that decides: publish and the inbox (service.py), outbound
webhooks, pushes and e-mails (outbound.py), rate limits and caps
(ratelimits.py), failed logins, key checks and user tokens counted by the
cluster (failures.py), API keys and their revocation on every node (keys.py),
apps' signing secrets and their rotation (apps.py), users' tokens revoked on
every node (revocations.py), and the loop that fires scheduled notifications
(scheduler.py).  The HTTP routes and the gateway call it; it calls the store
and the broker."""

from tidings.service.service import Service

__all__ = ["Service"]
