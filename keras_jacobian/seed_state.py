"""Saves a model's random-draw state with its weights."""

SEED_STATE = "seed_generator_state"


class SeedStateMixin:
    """Adds `self.seed_generator`'s state to the model's own variables.

    Keras leaves a `SeedGenerator`'s state out of weights files, so a run
    resumed from a backup would repeat its random draws (projections,
    noise). Weights files without the entry still load.
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        super().load_own_variables(
            {key: store[key] for key in keys if key != SEED_STATE}
        )
        if SEED_STATE in keys:
            self.seed_generator.state.assign(store[SEED_STATE])
