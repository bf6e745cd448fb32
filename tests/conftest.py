"""Every test session gets its own empty artifact cache, so results never depend on what an
earlier run left in ~/.cache/graphflux."""
import os
import tempfile

os.environ["GRAPHFLUX_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphflux-test-cache-")
