"""CDS Hooks 2.0 service (patient-view, order-select)."""

from fastapi import APIRouter

router = APIRouter()
