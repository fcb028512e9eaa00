"""A picture of a training run: evaluation return against real training steps."""

from __future__ import annotations

from pathlib import Path

from sindyrl_ros.core.progress import read_progress


def plot_learning_curve(run_dir: Path, threshold: float | None = None) -> Path | None:
    """Write run_dir/learning_curve.png; None when the run has no evaluation yet."""
    events, _ = read_progress(run_dir)
    evaluations = [e for e in events if e.get('event') == 'evaluation']
    if not evaluations:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = [e['real_steps'] for e in evaluations]
    returns = [e['eval_return_mean'] for e in evaluations]
    figure, axes = plt.subplots(figsize=(6, 4))
    explored = [
        e
        for e in events
        if e.get('event') == 'episode' and not e.get('evaluation') and e.get('end') != 'reset'
    ]
    if explored:
        axes.plot(
            [e['real_steps'] for e in explored],
            [e['episode_return'] for e in explored],
            'x',
            color='grey',
            label='exploration episodes (training data)',
        )
    axes.plot(steps, returns, 'o-', label='mean evaluation return')
    last_step = max([*steps, *(e['real_steps'] for e in explored)])
    axes.set_xlim(0, 1.08 * last_step + 1)
    if threshold is not None:
        axes.axhline(threshold, color='grey', linestyle='--', label=f'target {threshold:g}')
    axes.set_xlabel('real training steps on the plant')
    axes.set_ylabel('return')
    axes.set_title(f'{Path(run_dir).name}: SINDy-RL through the ROS 2 graph')
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(run_dir) / 'learning_curve.png'
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
