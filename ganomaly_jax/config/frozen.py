"""The config as the jitted steps see it: `StepConfig`, a frozen, hashable view of the sections the
step reads, so it can be a static argument of jit (a ConfigDict cannot).

Every key of those sections is frozen (`FrozenSection`), so a new config key reaches the step with
no edit here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

# The config sections the step reads; `StepConfig` freezes all of them, so a new key needs no edit here.
STEP_SECTIONS = ('model', 'loss', 'train', 'mask', 'eval')


@dataclasses.dataclass(frozen=True)
class FrozenSection:
  """A read-only, hashable view of one flat config section: `section.key` as on the ConfigDict."""

  items: tuple[tuple[str, Any], ...]

  @classmethod
  def of(cls, section: ml_collections.ConfigDict) -> 'FrozenSection':
    return cls(tuple(sorted(section.to_dict().items())))

  def __getattr__(self, name: str) -> Any:
    if name.startswith('__') or name == 'items':  # copy / pickle probe before `items` exists
      raise AttributeError(name)
    for key, value in self.items:
      if key == name:
        return value
    raise AttributeError(f'config section has no key {name!r}.')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The config the step depends on, frozen (static under jit): `step_config.loss.w_adv`,
  `step_config.mask.kind`, ..."""

  model: FrozenSection
  loss: FrozenSection
  train: FrozenSection
  mask: FrozenSection
  eval: FrozenSection
  debug_nan_at_step: int
  normalization: str = 'tanh'  # dataset.normalization: the one data key the steps read

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    """Freezes the sections in `STEP_SECTIONS` (every key, so none is copied by hand)."""
    sections = {name: FrozenSection.of(config[name]) for name in STEP_SECTIONS}
    return cls(
        **sections,
        debug_nan_at_step=config.debug_nan_at_step,
        normalization=config.dataset.normalization,
    )

  def with_eval(self, **changes: Any) -> 'StepConfig':
    """This config with eval keys replaced: `step_config.with_eval(score='map_max', map='l1')`."""
    items = dict(self.eval.items)
    unknown = sorted(set(changes) - set(items))
    if unknown:
      raise AttributeError(f'eval section has no key(s) {unknown}.')
    items.update(changes)
    return dataclasses.replace(self, eval=FrozenSection(tuple(sorted(items.items()))))
