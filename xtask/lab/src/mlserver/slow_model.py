# The lab's model: a custom MLServer runtime whose predict waits a delay the lab sets
# (`parameters.extra.delay_ms` in its model-settings.json; `slow-mlserver --ms N`), then
# answers one FP64 output. Written next to model-settings.json by cniguard-lab.
import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SlowModel(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        extra = (parameters.extra if parameters else None) or {}
        self._delay = float(extra.get("delay_ms", 0)) / 1000.0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("y", np.array([1.0]))],
        )
