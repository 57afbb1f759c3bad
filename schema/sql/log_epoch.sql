SELECT epoch, current_database() FROM herald.install
