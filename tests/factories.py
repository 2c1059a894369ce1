"""factory-boy factories for runs in any state, without running them.

``SagaFactory(failed_in_compensation=True)`` builds a ``chain`` run whose
compensation of s1 ran out of tries, as the engine would have left it.
"""

import factory

from sagaflow.models import Saga, SagaState, SagaStep, StepState

CHAIN = ["s0", "s1", "s2", "s3"]


class SagaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Saga
        skip_postgeneration_save = True

    name = "chain"
    state = SagaState.RUNNING
    data = factory.LazyFunction(dict)
    correlation_id = factory.Sequence(lambda n: f"corr-{n}")

    class Params:
        completed = factory.Trait(state=SagaState.COMPLETED, current_step=len(CHAIN))
        failed_in_compensation = factory.Trait(
            state=SagaState.FAILED,
            current_step=1,
            error="compensation of step 's1' failed after 3 attempt(s): Boom",
        )

    @factory.post_generation
    def steps(saga, create, extracted, **kwargs):
        if not create:
            return
        if saga.state == SagaState.COMPLETED:
            states = [StepState.SUCCEEDED] * 4
        elif saga.state == SagaState.FAILED:
            states = [
                StepState.SUCCEEDED,
                StepState.COMPENSATING,
                StepState.FAILED,
                StepState.PENDING,
            ]
        else:
            states = [StepState.PENDING] * 4
        SagaStep.objects.bulk_create(
            SagaStep(
                saga=saga,
                index=i,
                name=name,
                state=state,
                attempts=1 if state != StepState.PENDING else 0,
                compensation_attempts=3 if state == StepState.COMPENSATING else 0,
            )
            for i, (name, state) in enumerate(zip(CHAIN, states, strict=True))
        )
