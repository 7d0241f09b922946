"""Operations: health checks, failure detection and recovery, backups, autoscaling, telemetry
and live reconfiguration (docs/operations.md, docs/observability.md).

:class:`fleetchat.ops.runtime.Operations` (``hub.ops``) composes them; the loops run on the
leading node only.
"""
