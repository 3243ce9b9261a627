"""The runner: typed run configs, data collation, the Accelerate loop, checkpoints, logs, reports, plots.

`peftlab train CONFIG [key=value ...]`, `peftlab translate ORIGINAL`, `peftlab eval RUN_DIR`, `peftlab predict RUN_DIR --input FILE`,
`peftlab plot RUN_DIR` dispatch to the `cli_*` functions here. See docs/runner.md.
"""
from .cli import cli_eval, cli_plot, cli_predict, cli_train, cli_translate
from .schema import RunConfig, load_run_config, load_run_configs

__all__ = ["cli_train", "cli_translate", "cli_eval", "cli_predict", "cli_plot", "RunConfig", "load_run_config",
           "load_run_configs"]
