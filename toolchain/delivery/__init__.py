"""The deployment bundle (templates rendered, runtime copied, manifest written) and its deployment to boards, with rollback."""
