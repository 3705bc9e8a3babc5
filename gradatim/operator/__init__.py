"""The kopf operator: `kopf run -m gradatim.operator` (or `gradatim operator`).

Importing this package registers the handlers with kopf.
"""

from gradatim.operator import handlers  # noqa: F401  (registers the handlers)
