"""The large-study generator (`crf-app demo --subjects N`, the benchmarks' studies): the same
rules as the services (it validates through the domain and builds addresses and values with
the domain's vocabulary), written in bulk; above the services, below the CLI."""
