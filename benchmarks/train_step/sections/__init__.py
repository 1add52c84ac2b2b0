"""The benchmark's sections, one module each, in report order.

A section module has `TITLE` and `setups(scale) -> {table: () -> Setup}`;
sections/_common.py measures every row on each table. Adding a section is a
new module and one line here.
"""

from __future__ import annotations

from types import ModuleType

from . import train_step, update_alone

SECTIONS: dict[str, ModuleType] = {
  "train_step": train_step,
  "update_alone": update_alone,
}
