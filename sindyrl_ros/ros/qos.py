"""The QoS profiles of the topic contract (see ARCHITECTURE.md, "Topics")."""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

__all__ = [
    'SENSOR_QOS',
    'RELIABLE_QOS',
    'TRANSITION_QOS',
    'LEDGER_QOS',
    'EPISODE_QOS',
    'LATCHED_QOS',
]

# Sensor streams: a late sample is worthless, so best effort and a short queue.
SENSOR_QOS = qos_profile_sensor_data
# Observations, actions, commands: every sample counts (the model updater pairs them).
RELIABLE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
# What the model updater records (observations, actions, rewards): a reliable writer keeps
# only `depth` samples for resending, so bursts need a deep history on both sides.
TRANSITION_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE
)
# What scores steps (the serial bridge's ledger reads every observation): a deep queue
# rides out a busy executor.
LEDGER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE
)
# Episode records: a run supervisor that starts later still gets the recent ones.
EPISODE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Models, policies, e-stop: a node that starts later still gets the latest value.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
