"""The experiment suite: registry, run context, resumable runner, provenance, report, the
memory planner and catalogue, and mx.distributed item splitting.

Imports mlxinterp.core only; studies register themselves into it (`@experiment`), and the
runner finds them by package name, never by importing a study module directly.
"""
from mlxinterp.suite.context import Context
from mlxinterp.suite.registry import (Experiment, config_fields, experiment, list_experiments,
                                      parse_overrides, register_builtin, select)
from mlxinterp.suite.runner import free_memory, resume_command, run_all

__all__ = ["Context", "Experiment", "config_fields", "experiment", "free_memory", "list_experiments",
           "parse_overrides", "register_builtin", "resume_command", "run_all", "select"]
