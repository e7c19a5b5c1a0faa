"""The CmFNet loss terms, one module each, and the hybrid loss that combines them."""
