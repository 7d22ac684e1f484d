"""Bundle `unpooled`: parsed with [gpu_webhook] assign_pools = False (tests/e2e/test_airflow_pools.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_mapped import mapped_gpu_dag

quota_a_off = mapped_gpu_dag("pools_off__mapped8", "pools-a-off", 8)  # tenant pools-a-off: as pools-a
