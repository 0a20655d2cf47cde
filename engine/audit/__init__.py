"""`dpiqa audit`: streaming statistics, drift and an HTML report over a scored run (see `run.py`)."""

from dpiqa.engine.audit.run import ALERT_EXIT, AuditConfig, AuditResult, run_audit

__all__ = ["ALERT_EXIT", "AuditConfig", "AuditResult", "run_audit"]
