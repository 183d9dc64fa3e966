"""An image whose provider call failed: sent to a retry tier, or its task failed.

The state machine's ``decide`` picks which from the failure and the image's attempts; the
outcome is written with its events in one transaction, then logged.
"""

from __future__ import annotations

from services import metrics
from services.broker.errors import Drop
from services.config import Settings
from services.db.errors import LostRace
from services.db.repository import Repository, Tx
from services.db.rows import ImageRow, TaskRow
from services.events import Events
from services.logs import get_logger
from services.provider.errors import ProviderError, ProviderHTTPError, ProviderPollTimeout
from services.worker.message import ImageMessage
from statemachine import FailNow, RetryLater, Trigger, decide

log = get_logger("imagegen.worker")


class Failures:
    def __init__(self, settings: Settings, repo: Repository, events: Events) -> None:
        self.max_retries = settings.max_retries
        self.repo = repo
        self.events = events

    async def record(self, msg: ImageMessage, image: ImageRow, exc: ProviderError) -> None:
        error = str(exc)
        decision, task = await self.repo.atomic(lambda tx: self._write(tx, msg, exc, error))
        self._report(msg, image, exc, error, decision, task)

    async def _write(
        self, tx: Tx, msg: ImageMessage, exc: ProviderError, error: str
    ) -> tuple[RetryLater | FailNow, TaskRow]:
        """The decision, written with its events; and the task as the write left it."""
        task, current = await tx.get_task_and_image(msg.task_id, msg.index)
        if task is None or current is None or not task.active:
            raise Drop(f"task {msg.task_id} already ended; failure of image {msg.index} ignored")
        if current.stored or current.dispatch != msg.dispatch:
            raise Drop(f"image {msg.task_id}/{msg.index} moved on meanwhile")
        decision = decide(exc.failure, current.attempts, self.max_retries)
        if isinstance(decision, RetryLater):
            again = await tx.redispatch(
                current,
                failed=True,
                error=error,
                keep_provider_task=isinstance(exc, ProviderPollTimeout),
                submit_in_doubt=exc.ambiguous,
            )
            row = await tx.touch(task)
            if row is None:
                raise LostRace()
            await tx.add_outbox(
                [
                    self.events.retrying(row, again, decision, error),
                    self.events.image_message(again, decision),
                ]
            )
            return decision, row
        row = await tx.transition(
            task, Trigger.FAIL, error_code=decision.kind.value, error_message=error
        )
        if row is None:
            raise LostRace()
        error_body = {"code": decision.kind.value, "message": error}
        await tx.add_outbox([self.events.changed(row, task.status, error=error_body)])
        return decision, row

    def _report(
        self,
        msg: ImageMessage,
        image: ImageRow,
        exc: ProviderError,
        error: str,
        decision: RetryLater | FailNow,
        task: TaskRow,
    ) -> None:
        fields: dict[str, object] = {
            "task_id": msg.task_id,
            "image_index": msg.index,
            "attempt": image.attempts,
        }
        if (retry_after_s := exc.failure.retry_after_s) is not None:
            fields["retry_after_s"] = retry_after_s  # why the delay may exceed the attempt's
        retryable = decision.kind.retryable
        log.warning(
            "image failed", action="image_error", error=error, retryable=retryable, **fields
        )
        if isinstance(decision, RetryLater):
            queue = self.events.topology.retry_queue(decision.kind, decision.tier).name
            metrics.RETRIES.labels(f"{decision.reason}.{decision.delay_s}s").inc()
            if decision.reason == "rate_limited":
                log.warning(
                    f"429 detected, waiting {decision.delay_s} s",
                    action="rate_limited",
                    delay_s=decision.delay_s,
                    **fields,
                )
            log.info(
                f"retry {decision.retry}/{self.max_retries} in {decision.delay_s} s",
                action="retry_scheduled",
                delay_s=decision.delay_s,
                queue=queue,
                **fields,
            )
            return
        metrics.task_finished(task.status.value, task.created_at)
        why = "retries exhausted" if decision.exhausted else "not retryable"
        log.error(f"task failed: {why}", action="task_failed", error=error, **fields)
        if isinstance(exc, ProviderHTTPError) and exc.status in (401, 403):
            log.error("check DASHSCOPE_API_KEY and the account", action="provider_auth")
