"""Bundle `pooled`: parsed with [gpu_webhook] assign_pools on (tests/e2e/test_airflow_pools.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_mapped import mapped_gpu_dag

quota_a = mapped_gpu_dag("pools_a__mapped8", "pools-a", 8)          # tenant pools-a: 2 slices at once
quota_b = mapped_gpu_dag("pools_b__mapped4", "pools-b", 4)          # tenant pools-b: 8 slices at once
unlimited = mapped_gpu_dag("pools_free__mapped8", "pools-free", 8)  # tenant pools-free: no quota, no pool
unsized = mapped_gpu_dag("pools_c__unsized", "pools-c", 1)          # tenant pools-c: its pool is never made
