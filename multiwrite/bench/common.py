"""Names of the collective benchmarks' shared machinery, re-exported from the modules that hold them
now (see the package docstring), so that older imports keep working, e.g. scripts/demo.sh's and
scripts/bench_results.sh's ``from multiwrite.bench.common import show``. New code imports from the
modules themselves; no benchmark module imports this one.
"""
from .._util import parse_delay_us, parse_rate, size_arg  # noqa: F401
from .bound import bound_us, link_params  # noqa: F401
from .checks import count_wrong_elements  # noqa: F401
from .context import Context, WireCounter  # noqa: F401
from .harness import Impl, Progress, available_impls, balanced_orders, run_interleaved  # noqa: F401
from .options import (BASELINES, DTYPES, IMPLS, LABELS, add_common_arguments, check_common_args,  # noqa: F401
                      fail, sizes_from_args)
from .plot import plot  # noqa: F401
from .report import (COLUMNS, emit, format_table, header_lines, make_rows, run_metadata, show,  # noqa: F401
                     summary_lines, write_json)
