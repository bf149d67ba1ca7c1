"""A clock the test moves by hand, for code that takes `clock=` (the reactor's timers)."""


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
