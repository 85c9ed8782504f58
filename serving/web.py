"""The clinician web page served at `/`."""

from fastapi import APIRouter

router = APIRouter()
