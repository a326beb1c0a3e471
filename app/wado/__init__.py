"""The token-checked WADO-RS gateway: images only for studies the access token may see."""
