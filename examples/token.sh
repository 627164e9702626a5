# a token for the demo user, minted from the store `tidings serve` runs on (./tidings-data)
export USER_TOKEN=$(tidings token --app default --user demo-user | tail -n 1)
