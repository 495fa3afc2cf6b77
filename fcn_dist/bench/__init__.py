"""Benchmarks behind ``fcn-bench``: the model (``model``) and the service (``service``)."""

from fcn_dist.bench.model import format_model_table, run_model_bench
from fcn_dist.bench.timing import gemm_peak, machine_info

__all__ = ["format_model_table", "gemm_peak", "machine_info", "run_model_bench"]
