"""hiscrm_bus: the typed configuration bus over Redis shared by the Master and the workers.

It knows Redis and pydantic and nothing about crawling.
"""

from typing import Final

__version__ = "0.1.0"
PROTOCOL_VERSION: Final = 1
