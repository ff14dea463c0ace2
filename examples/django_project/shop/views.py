from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from shop.models import Order
from shop.tasks import fulfil
from taskpipe import ResultTimeout, ResultUnknown, TaskFailed
from taskpipe.contrib.django import app


class Rollback(Exception):
    pass


@csrf_exempt  # an API for the example's scripts; a real form would carry the CSRF token
def create_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    outcome: dict[str, object] = {}
    try:
        with transaction.atomic():
            order = Order.objects.create(item=body["item"], quantity=int(body["quantity"]))
            result = fulfil.delay_on_commit(order.pk)
            # not published yet: the job appears only once this transaction commits
            outcome = {
                "order": order.pk,
                "job": result.id,
                "state_inside_transaction": result.state,
            }
            if body.get("fail"):
                raise Rollback()
    except Rollback:
        return JsonResponse({**outcome, "rolled_back": True}, status=409)
    outcome["state_after_commit"] = result.state
    return JsonResponse(outcome, status=202)


def order(request: HttpRequest, pk: int) -> JsonResponse:
    found = Order.objects.filter(pk=pk).values("item", "status", "fulfilled_by").first()
    return JsonResponse(found or {"error": "no such order"}, status=200 if found else 404)


def job(request: HttpRequest, job_id: str) -> JsonResponse:
    handle = app.AsyncResult(job_id)
    try:
        value = handle.get(timeout=float(request.GET.get("wait", "0")))
    except ResultTimeout:
        return JsonResponse({"state": handle.state})
    except ResultUnknown:
        return JsonResponse({"state": "unknown"}, status=404)
    except TaskFailed as exc:
        return JsonResponse({"state": "failed", "error": str(exc)})
    return JsonResponse({"state": "finished", "value": value})
