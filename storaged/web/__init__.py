"""The pages a person sees: browsing the data tree, the OpenAPI document and its docs page."""
