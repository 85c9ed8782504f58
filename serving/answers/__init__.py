"""The answer of one episode in words: bands, top factors and warnings (DESIGN.md "One patient
over HTTP"). Feature wording is `features.registry`'s; these modules only put it in sentences."""
