"""The model of the unit: its architecture as data (:mod:`.config`), the
issue rule and the reduction order (:mod:`.schedule`), the cycle-by-cycle
simulation (:mod:`.simulator`) and the golden model of its bits
(:mod:`.reference`). The public names are in :mod:`iterl2norm.hw`."""
