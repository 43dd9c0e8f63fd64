"""A thin HTTP client of the fleet API for the operator CLI. Errors become FleetError with one line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from fleet.errors import FleetError, FleetUnreachableError

FLEET_URL_ENV = "EDGEFLEET_FLEET_URL"
TOKEN_ENV = "EDGEFLEET_TOKEN"
DEFAULT_FLEET_URL = "http://127.0.0.1:8080"
DEVICE_PAGE = 1000
"""Devices per request when the CLI walks the whole list (the API's largest page)."""


def default_fleet_url(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(FLEET_URL_ENV) or DEFAULT_FLEET_URL


class FleetClient:
    def __init__(
        self,
        base_url: str,
        session: requests.Session | None = None,
        timeout_s: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError as exc:
            raise FleetUnreachableError(
                f"cannot reach the fleet at {self.base_url}: is `edgefleet fleet serve` running there? "
                f"(set --fleet or {FLEET_URL_ENV})"
            ) from exc
        except requests.Timeout as exc:
            raise FleetUnreachableError(
                f"the fleet at {self.base_url} did not answer within {self.timeout_s:.0f}s"
            ) from exc
        except requests.RequestException as exc:
            raise FleetUnreachableError(f"request to {url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise FleetError(f"the fleet answered {response.status_code}: {_detail(response)}")
        return response

    def push(self, bundle: Path) -> tuple[dict[str, Any], bool]:
        """Upload a bundle; (model info, True if newly stored, False if it was already there)."""
        try:
            data = bundle.read_bytes()
        except OSError as exc:
            raise FleetError(f"cannot read {bundle}: {exc.strerror or exc}") from exc
        response = self._request(
            "POST", "/api/v1/models", data=data, headers={"Content-Type": "application/octet-stream"}
        )
        info: dict[str, Any] = response.json()
        return info, response.status_code == 201

    def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/models").json()
        return result

    def deploy(self, name: str, version: str, device_id: str | None) -> dict[str, Any]:
        body = {"name": name, "version": version, "device_id": device_id}
        result: dict[str, Any] = self._request("POST", "/api/v1/deployments", json=body).json()
        return result

    def devices(
        self, filters: Mapping[str, str | None] | None = None, most: int | None = None
    ) -> list[dict[str, Any]]:
        """Every device matching ``filters`` (the list's query parameters), following the
        X-Next-Cursor of each page; at most ``most`` when given."""
        found: list[dict[str, Any]] = []
        params: dict[str, str | int] = {k: v for k, v in (filters or {}).items() if v is not None}
        while most is None or len(found) < most:
            page_size = DEVICE_PAGE if most is None else min(DEVICE_PAGE, most - len(found))
            response = self._request("GET", "/api/v1/devices", params={**params, "limit": page_size})
            found += response.json()
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                break
            params["cursor"] = cursor
        return found

    def delete_model(self, name: str, version: str) -> None:
        self._request("DELETE", f"/api/v1/models/{name}/{version}")

    def add_device(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/api/v1/devices", json=body).json()
        return result

    def device_identity(self, device_id: str, action: str) -> dict[str, Any]:
        """``revoke``, ``rotate-secret`` (POST) or ``delete`` (DELETE) one device."""
        if action == "delete":
            response = self._request("DELETE", f"/api/v1/devices/{device_id}")
        else:
            response = self._request("POST", f"/api/v1/devices/{device_id}/{action}")
        result: dict[str, Any] = response.json()
        return result

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/api/v1/rollouts", json=body).json()
        return result

    def rollouts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/rollouts").json()
        return result

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/rollouts/{rollout_id}").json()
        return result

    def rollout_action(self, rollout_id: int, action: str, reason: str | None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        result: dict[str, Any] = self._request(
            "POST", f"/api/v1/rollouts/{rollout_id}/{action}", json=body
        ).json()
        return result


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text.splitlines()[0] if text else response.reason
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail is not None else str(body)
